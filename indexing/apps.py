from __future__ import annotations

from django.apps import AppConfig


class IndexingConfig(AppConfig):
    """The indexing consumer: full-text index of uploads, search page and command."""

    name = "indexing"
    verbose_name = "Search index"

    def ready(self) -> None:
        from events.registry import Consumer, register_consumer
        from indexing import handlers
        from uploads.events import FILE_DELETED, FILE_UPLOADED

        register_consumer(
            Consumer(
                name="indexing",
                queue="indexing",
                handlers={
                    # Two steps: the file is read and its text extracted before the
                    # delivery's transaction (and SQLite's write lock) is taken.
                    FILE_UPLOADED: handlers.index_upload,
                    FILE_DELETED: handlers.remove_upload,
                },
            )
        )
