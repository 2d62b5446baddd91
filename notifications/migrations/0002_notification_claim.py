"""Claim before sending: a state per notification, when it was claimed, and why not sent."""

from django.db import migrations, models


def states_of_existing_rows(apps, schema_editor):
    # Before claims, a row was written only after the mail went out or was skipped.
    Notification = apps.get_model("notifications", "Notification")
    Notification.objects.filter(sent_at__isnull=False).update(state="sent")
    Notification.objects.filter(sent_at__isnull=True).update(state="skipped")


class Migration(migrations.Migration):
    dependencies = [
        ("notifications", "0001_initial"),
    ]

    operations = [
        migrations.RenameField(
            model_name="notification",
            old_name="skipped_reason",
            new_name="reason",
        ),
        migrations.AlterField(
            model_name="notification",
            name="reason",
            field=models.TextField(
                blank=True,
                help_text="Why it was skipped or rejected (the mail server's reply).",
            ),
        ),
        migrations.AddField(
            model_name="notification",
            name="state",
            field=models.CharField(
                choices=[
                    ("claimed", "claimed"),
                    ("sent", "sent"),
                    ("skipped", "skipped"),
                    ("rejected", "rejected"),
                ],
                default="claimed",
                max_length=10,
            ),
        ),
        migrations.AddField(
            model_name="notification",
            name="claimed_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When the attempt now holding the claim took it.",
                null=True,
            ),
        ),
        migrations.RunPython(states_of_existing_rows, migrations.RunPython.noop),
    ]
