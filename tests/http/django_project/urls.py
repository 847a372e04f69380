from django.urls import path

from . import views

urlpatterns = [
    path("json", views.json_body),
    path("upload", views.upload),
    path("stream", views.stream),
    path("ignore", views.ignore),
]
