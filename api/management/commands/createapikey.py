"""`manage.py createapikey USERNAME [--name NAME]`: print a new API key (for scripts and the
first use; it is shown once and stored only as a digest)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from api import keys


class Command(BaseCommand):
    help = "Create an API key for a user and print it (it is shown only this once)."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="created with manage.py createapikey")

    def handle(self, *args, username, name, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"There is no user {username!r}; create it first (manage.py createsuperuser).")
        if not user.is_active:
            raise CommandError(f"The user {username!r} is inactive.")
        try:
            _, key = keys.create(user, name)
        except keys.KeyLimitError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(key)
