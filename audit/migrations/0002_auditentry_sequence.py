"""Number the audit entries and re-chain them with the number inside each hash.

Entries recorded before this migration are numbered in their order (``id``) and their
hashes recomputed: run ``verify_audit`` before upgrading, since a chain broken before
this step would come out of it intact.
"""

import hashlib
import json

from django.db import migrations, models

GENESIS_HASH = "0" * 64


def _canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def number_and_rechain(apps, schema_editor):
    AuditEntry = apps.get_model("audit", "AuditEntry")
    previous = GENESIS_HASH
    for sequence, entry in enumerate(AuditEntry.objects.order_by("pk").iterator(), start=1):
        content = {
            "sequence": sequence,
            "event_id": str(entry.event_id),
            "event_type": entry.event_type,
            "actor": entry.actor,
            "upload_id": entry.upload_id,
            "payload_digest": entry.payload_digest,
            "occurred_at": entry.occurred_at.isoformat(),
            "recorded_at": entry.recorded_at.isoformat(),
            "prev_hash": previous,
        }
        digest = hashlib.sha256(_canonical(content).encode()).hexdigest()
        AuditEntry.objects.filter(pk=entry.pk).update(
            sequence=sequence, prev_hash=previous, hash=digest
        )
        previous = digest


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="auditentry",
            name="sequence",
            field=models.PositiveBigIntegerField(null=True),
        ),
        migrations.RunPython(number_and_rechain, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="auditentry",
            name="sequence",
            field=models.PositiveBigIntegerField(unique=True),
        ),
        migrations.AlterModelOptions(
            name="auditentry",
            options={"ordering": ["sequence"], "verbose_name_plural": "audit entries"},
        ),
    ]
