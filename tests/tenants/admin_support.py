"""Drive the real admin change forms: read a change page, send it back edited."""

from typing import Any

from django.contrib.auth.models import Permission, User
from django.test import Client


def operator_browser(username: str) -> Client:
    """A staff operator holding every permission of the tenants app (not a superuser)."""
    user = User.objects.create_user(username, password="pw-" + username, is_staff=True)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="tenants"))
    browser = Client()
    browser.force_login(user)
    return browser


def _form_data(form: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for bound in form:
        value = bound.value()
        if value is False:
            continue  # an unticked checkbox is absent from a browser's POST
        data[bound.html_name] = "on" if value is True else ("" if value is None else value)
    return data


def change_form_data(page: Any) -> dict[str, Any]:
    """The POST body of a change page as shown: the main form and every inline formset."""
    assert page.status_code == 200, page.content[:500]
    data = _form_data(page.context["adminform"].form)
    for inline in page.context["inline_admin_formsets"]:
        formset = inline.formset
        data |= _form_data(formset.management_form)
        for form in formset.forms:
            data |= _form_data(form)
    return data


def inline_row_add(data: dict[str, Any], prefix: str, **fields: Any) -> dict[str, Any]:
    """Add one new row to the inline formset `prefix` (e.g. "grants")."""
    index = int(data[f"{prefix}-TOTAL_FORMS"])
    data[f"{prefix}-TOTAL_FORMS"] = str(index + 1)
    for name, value in fields.items():
        data[f"{prefix}-{index}-{name}"] = value
    return data


def inline_row_index(data: dict[str, Any], prefix: str, pk: int) -> int:
    """The index of the existing inline row whose object has this primary key."""
    for index in range(int(data[f"{prefix}-INITIAL_FORMS"])):
        if str(data.get(f"{prefix}-{index}-id")) == str(pk):
            return index
    raise AssertionError(f"no {prefix} row for pk {pk}")


def form_errors(page: Any) -> str:
    """Every error the re-rendered change page shows, main form and inlines, as text."""
    assert page.status_code == 200, f"expected the form again, got {page.status_code}"
    errors = [str(page.context["adminform"].form.errors)]
    for inline in page.context["inline_admin_formsets"]:
        errors += [str(form.errors) for form in inline.formset.forms]
        errors.append(str(inline.formset.non_form_errors()))
    return " ".join(errors)
