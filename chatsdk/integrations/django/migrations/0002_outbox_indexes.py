# Written for chatsdk 0.x on 2026-12-03 (the operation makemigrations makes), then reviewed.
# Expired entries on an index of their own (every flush counts them); queued entries by due
# time and claims by lease expiry (a claim's first look).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chatsdk", "0001_initial")]

    operations = [
        migrations.AddIndex(
            model_name="entry",
            index=models.Index(
                condition=models.Q(("status", "expired")),
                fields=["id"],
                name="chatsdk_outbox_expired",
            ),
        ),
        migrations.AddIndex(
            model_name="entry",
            index=models.Index(
                condition=models.Q(("status", "queued")),
                fields=["next_attempt_at", "id"],
                name="chatsdk_outbox_due",
            ),
        ),
        migrations.AddIndex(
            model_name="entry",
            index=models.Index(
                condition=models.Q(("status", "sending")),
                fields=["lease_expires_at"],
                name="chatsdk_outbox_leased",
            ),
        ),
    ]
