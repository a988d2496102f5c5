import logging

from django.apps import AppConfig
from django.conf import settings

logger = logging.getLogger("api.security")


class ApiConfig(AppConfig):
    name = "api"
    # "api" is the models' label (core.apps): this app holds the REST views and the admin.
    label = "rest"
    verbose_name = "REST API"

    def ready(self) -> None:
        if settings.JWT_PUBLIC_KEY and not settings.JWT_AUDIENCE:
            # The operator opted out (JWT_ALLOW_ANY_AUDIENCE=true; settings refuse it
            # otherwise): say so at every start, where a reviewer of the logs will see it.
            logger.warning(
                "JWT_ALLOW_ANY_AUDIENCE=true: tokens are accepted whatever their audience, "
                "including tokens the identity provider issued to other applications"
            )
