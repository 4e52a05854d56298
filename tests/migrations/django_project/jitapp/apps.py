from django.apps import AppConfig


class JitappConfig(AppConfig):
    name = "jitapp"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Log every statement (settings.PGJIT_DJANGO_SQL_LOG): force the debug
        # cursor on each new connection, as DEBUG = True would, without DEBUG.
        import os

        if os.environ.get("PGJIT_DJANGO_SQL_LOG"):
            from django.db.backends.signals import connection_created

            def force_debug_cursor(sender, connection, **kwargs):
                connection.force_debug_cursor = True

            connection_created.connect(force_debug_cursor, weak=False)
