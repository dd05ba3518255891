"""Import every model module so that Base.metadata is complete (migrations, the inventory test)."""

from credits import audit, crypto, jobs_models  # noqa: F401
from credits.accounts import models as accounts_models  # noqa: F401
from credits.calls import models as calls_models  # noqa: F401
from credits.db import Base
from credits.ledger import models as ledger_models  # noqa: F401
from credits.notify import models as notify_models  # noqa: F401
from credits.payments import models as payments_models  # noqa: F401
from credits.payments import page_integrity as page_integrity_models  # noqa: F401
from credits.rating import models as rating_models  # noqa: F401
from credits.security import models as security_models  # noqa: F401

metadata = Base.metadata

crypto.register("users", "email_enc", "name_enc", "dob_enc", "mfa_secret_enc")
crypto.register("caller_numbers", "number_enc")
crypto.register("email_tokens", "data_enc")
crypto.register("outbox", "recipient_enc", "context_enc")
crypto.register("security_reports", "description_enc")
