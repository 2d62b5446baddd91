from django.apps import AppConfig


class UploadsConfig(AppConfig):
    name = "uploads"
    verbose_name = "Uploads"

    def ready(self) -> None:
        # Declares the event types this app publishes.
        from uploads import events  # noqa: F401
