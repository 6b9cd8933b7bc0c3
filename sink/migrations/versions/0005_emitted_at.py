"""emitted_at: when each image's latest image.uploaded event was sent

A memory-only broker that restarted holds only the events sent since it started; the sink re-emits
at start-up the unfinished images whose latest event went out before that, and no others.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("emitted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("emitted_at")
