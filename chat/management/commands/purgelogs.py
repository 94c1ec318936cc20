"""manage.py purgelogs: delete for real what the logs keep past LOGS_RETENTION_DAYS."""

from django.core.management.base import BaseCommand, CommandError

from chat import retention


class Command(BaseCommand):
    help = (
        "Delete conversations users deleted, and replies regenerate replaced, once they are older than "
        "LOGS_RETENTION_DAYS (the Celery worker also does this on a schedule)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--days", type=int, help="Retention in days for this run (default: LOGS_RETENTION_DAYS).")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be purged.")

    def handle(self, *args, days=None, dry_run=False, **options) -> None:
        if days is not None and days < 0:
            raise CommandError(f"--days must be 0 or more (got {days}).")
        if dry_run:
            found = retention.Purged(retention.expired(days).count())
            self.stdout.write(f"Would purge {found}.")
            return
        self.stdout.write(f"Purged {retention.purge(days)}.")
