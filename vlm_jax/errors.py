"""The one exception type for mistakes a user can fix (config, flags, files)."""


class UserError(Exception):
  """A mistake in the user's input (config, files, flags); the CLI prints it as one line and exits 1."""
