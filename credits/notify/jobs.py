"""Jobs of the notify feature: `deliver-outbox`."""

from __future__ import annotations

from typing import Any

from credits import jobs


def deliver_outbox() -> dict[str, Any]:
    from credits.notify import delivery

    return delivery.deliver_due().as_dict()


jobs.register("deliver-outbox", deliver_outbox, 30, "send queued emails over SMTP; retry with back-off, dead-letter")
