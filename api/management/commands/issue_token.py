from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from api.auth import issue_token, user_for_username
from core.errors import ApiError


class Command(BaseCommand):
    help = "Print an access token (JWT) for USERNAME, creating the user if it does not exist."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--ttl", type=int, default=None, help="lifetime in seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        username: str = options["username"]
        try:
            user_for_username(username)
            token, _ = issue_token(username, ttl_s=options["ttl"])
        except ApiError as error:
            raise CommandError(f"cannot issue a token for {username!r}: {error.message}") from None
        self.stdout.write(token)
