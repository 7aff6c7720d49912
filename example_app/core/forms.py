"""Form of the staff page that sends one message to many addresses."""
from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import validate_email


class BulkEmailForm(forms.Form):
    """Subject, body and a textarea of addresses (one per line or comma separated)."""

    subject = forms.CharField(max_length=200)
    body = forms.CharField(widget=forms.Textarea)
    recipients = forms.CharField(
        widget=forms.Textarea, help_text="One address per line (commas also work)."
    )

    def clean_recipients(self) -> list[str]:
        """Split and validate here so the view only ever sees good addresses."""
        raw = self.cleaned_data["recipients"].replace(",", "\n")
        addresses = [line.strip() for line in raw.splitlines() if line.strip()]
        if not addresses:
            raise ValidationError("Enter at least one address.")
        for address in addresses:
            try:
                validate_email(address)
            except ValidationError:
                raise ValidationError(f"Not a valid address: {address}") from None
        return addresses
