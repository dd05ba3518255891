"""Render an email from templates/email/<name>.txt (first line "Subject: ...") and the optional <name>.html."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any

import jinja2

from credits import config

EMAIL_TEMPLATES = config.PROJECT_ROOT / "templates" / "email"


class TemplateError(Exception):
    """The template is unknown or does not render with this context (a permanent failure)."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def when(value: object) -> str:
    """Show an ISO 8601 time (or a datetime) as "22 Nov 2026, 12:00 UTC"; a date as "22 Nov 2026"."""
    if isinstance(value, str):
        try:
            parsed: datetime | date = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        if len(value) == 10:
            parsed = parsed.date() if isinstance(parsed, datetime) else parsed
    elif isinstance(value, (datetime, date)):
        parsed = value
    else:
        return str(value)
    if isinstance(parsed, datetime):
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC)
        return parsed.strftime("%d %b %Y, %H:%M UTC").lstrip("0")
    return parsed.strftime("%d %b %Y").lstrip("0")


@functools.cache
def _environment() -> jinja2.Environment:
    # Autoescape for .html only: the text part is plain text, where escaping would show "&amp;".
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(EMAIL_TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["when"] = when
    return env


def render(name: str, context: dict[str, Any]) -> Rendered:
    """Render template `name` with `context` (plus `public_url`). Raises TemplateError.

    The text template's first line is "Subject: ..."; the subject is one line (no header injection).
    """
    env = _environment()
    values = {"public_url": config.current().public_url, **context}
    try:
        text = env.get_template(f"{name}.txt").render(values)
        try:
            html: str | None = env.get_template(f"{name}.html").render(values)
        except jinja2.TemplateNotFound:
            html = None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"{name}: {type(exc).__name__}") from exc
    first, _, body = text.partition("\n")
    if not first.startswith("Subject: "):
        raise TemplateError(f"{name}.txt must start with a 'Subject: ' line")
    subject = " ".join(first.removeprefix("Subject: ").split())
    return Rendered(subject, body.lstrip("\n"), html)


def compose(rendered: Rendered, *, to: str, sender: str, message_key: str | None = None) -> EmailMessage:
    """Build the MIME message: text, plus an HTML alternative when there is one."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    domain = sender.rpartition("@")[2] or "localhost"
    msg["Message-ID"] = make_msgid(idstring=message_key, domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(rendered.text)
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html")
    return msg
