"""listing indexes: (filter column, created_at, id) for each filter of GET /api/results

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_images_status_created": ["status", "created_at", "id"],
    "ix_images_scene_created": ["scene_type", "created_at", "id"],
    "ix_images_faces_created": ["faces_detected", "created_at", "id"],
    "ix_images_text_created": ["text_found", "created_at", "id"],
}


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_scene_type")
        for name, columns in INDEXES.items():
            batch.create_index(name, columns)


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        for name in INDEXES:
            batch.drop_index(name)
        batch.create_index("ix_images_scene_type", ["scene_type"])
