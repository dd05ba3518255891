"""Import every model module so that Base.metadata is complete (migrations, the inventory test)."""

from credits import audit, jobs_models  # noqa: F401
from credits.accounts import models as accounts_models  # noqa: F401
from credits.calls import models as calls_models  # noqa: F401
from credits.db import Base
from credits.ledger import models as ledger_models  # noqa: F401
from credits.rating import models as rating_models  # noqa: F401

metadata = Base.metadata
