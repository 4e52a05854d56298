"""One session: migrate jitapp back to zero, then everything forward again
(``python roundtrip.py`` with DJANGO_SETTINGS_MODULE=jitproject.settings)."""

import django
from django.core.management import call_command
from django.db import connection

django.setup()
with connection.cursor() as cur:
    cur.execute("SELECT session_user, current_user")
    who = cur.fetchone()
print(f"pgjit-test: session_user={who[0]} current_user={who[1]}", flush=True)
call_command("migrate", "jitapp", "zero", verbosity=1)
call_command("migrate", verbosity=1)
connection.close()
