from django.db import models


class ProbeEffect(models.Model):
    """One committed effect of a probe handler; duplicates are deliberately allowed."""

    consumer = models.CharField(max_length=100)
    event_id = models.UUIDField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.consumer} {self.event_id}"
