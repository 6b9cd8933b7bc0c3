"""event positions: where each image's latest image.uploaded event sits (partition, offset)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("event_partition", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("event_offset", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("event_offset")
        batch.drop_column("event_partition")
