"""Create the reporting views at instance, breast and study level.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04 21:00:00
"""

from alembic import op

from db.views import drop_statements, view_statements

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOTE: the statements come from db/views.py as it is now. A later change to a view must
    # add a migration that drops and recreates it, and keep this revision's SQL reachable
    # (for example as a frozen copy) if that change renames a column.
    for statement in view_statements(op.get_bind().dialect.name):
        op.execute(statement)


def downgrade() -> None:
    for statement in drop_statements():
        op.execute(statement)
