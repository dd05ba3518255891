"""Room on each page of wallets and lots (fillfactor 70 on PostgreSQL), so that their frequent updates (every
reserve, settle, authorize and complete writes a wallet row, and a settle its lots) can be HOT: the new row
version goes on the same page and no index entry is written. None of the columns those updates change is
indexed except wallets.next_expiry_at, which changes rarely. Applies to pages written from now on; existing
pages get the room when the table is rewritten (`VACUUM FULL wallets, lots` at a quiet time, see README).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 16:35:00.000000
"""

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

TABLES = ("wallets", "lots")
FILLFACTOR = 70


def upgrade():
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite has no fillfactor
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} SET (fillfactor = {FILLFACTOR})")


def downgrade():
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
