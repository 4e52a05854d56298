"""Settings of the Django project of tests/migrations/test_django_jit.py:
PostgreSQL through the pgjit gateway, the OIDC token as the password.

    PGJIT_DJANGO_PORT    the gateway's port (HOST is 127.0.0.1)
    PGJIT_DJANGO_USER    the person (the token's subject)
    PGJIT_DJANGO_TOKEN   the OIDC token
    PGJIT_DJANGO_PREFIX  prefix of jitapp's tables and named indexes
    PGJIT_DJANGO_SQL_LOG optional: a file that receives every SQL statement run
"""

import os

SECRET_KEY = "pgjit-tests-not-a-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "jitapp",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("PGJIT_DJANGO_HOST", "127.0.0.1"),
        "PORT": os.environ["PGJIT_DJANGO_PORT"],
        "NAME": "appdb",
        "USER": os.environ["PGJIT_DJANGO_USER"],
        "PASSWORD": os.environ["PGJIT_DJANGO_TOKEN"],
        "CONN_MAX_AGE": 0,
        "OPTIONS": {"sslmode": "disable", "connect_timeout": 10},
    }
}

PGJIT_TABLE_PREFIX = os.environ.get("PGJIT_DJANGO_PREFIX", "jitapp_")

LOGGING = {"version": 1, "disable_existing_loggers": False}
if os.environ.get("PGJIT_DJANGO_SQL_LOG"):
    # django.db.backends logs each statement (also a failed one) at DEBUG when
    # the cursor is a debug cursor, which jitapp/apps.py forces without DEBUG.
    LOGGING = {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"sql": {"class": "logging.FileHandler", "filename": os.environ["PGJIT_DJANGO_SQL_LOG"]}},
        "loggers": {"django.db.backends": {"handlers": ["sql"], "level": "DEBUG", "propagate": False}},
    }
