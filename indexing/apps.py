from django.apps import AppConfig


class IndexingConfig(AppConfig):
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
                    FILE_UPLOADED: handlers.index_upload,
                    FILE_DELETED: handlers.remove_upload,
                },
            )
        )
