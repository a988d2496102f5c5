from django.apps import AppConfig


class CoreConfig(AppConfig):
    """The generations, conversations and per-user limits, and what every other app stands on.

    Its label is "api": the tables (api_generation, ...), the migration history, the content
    types and the permissions were created under that label when the models lived in the REST
    app, and a deployment upgrades without renaming any of them."""

    name = "core"
    label = "api"
    verbose_name = "Generations"
