"""Counts new messages into the usage dashboard's rollup (the page does it too, on each load):
for a cron job on busy sites, so a page load never has much to count; --rebuild starts over."""

from django.core.management.base import BaseCommand

from dashboard import rollup


class Command(BaseCommand):
    help = "Count finished messages into the usage dashboard's per-day rollup."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--rebuild", action="store_true", help="forget the rollup and count every message again")

    def handle(self, *args, rebuild: bool = False, **options) -> None:
        state = rollup.rebuild() if rebuild else rollup.refresh()
        self.stdout.write(f"Messages counted through id {state.counted_through_id}.")
