"""The one base of every refusal or failure a person can act on; each face renders it in its own words."""


class UserError(Exception):
    """The message says what went wrong and what to do next."""
