"""The project's WSGI application, as ``django-admin startproject`` writes it.

Imported only by the test server's own process (``app_server.py django_project.wsgi:application``),
so setting DJANGO_SETTINGS_MODULE here touches neither pytest's process nor other tests.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ["DJANGO_SETTINGS_MODULE"] = "django_project.settings"
application = get_wsgi_application()
