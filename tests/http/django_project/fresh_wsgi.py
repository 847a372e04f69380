"""The WSGI application of the fresh project (``fresh_settings``), as ``startproject`` writes it.

Imported only by a server's own process (``gearshift django_project.fresh_wsgi:application``,
with ``tests/http`` on ``sys.path``), so setting DJANGO_SETTINGS_MODULE here touches nothing else.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ["DJANGO_SETTINGS_MODULE"] = "django_project.fresh_settings"
application = get_wsgi_application()
