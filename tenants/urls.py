from django.urls import path

from tenants import api

app_name = "oauth"

urlpatterns = [
    path("token", api.token, name="token"),
    path("<slug:tenant>/token", api.token, name="tenant-token"),
    path("revoke", api.revoke, name="revoke"),
]
