"""WSGI entry point: gunicorn serves ``edupulse.wsgi:application``."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "edupulse.settings")

application = get_wsgi_application()
