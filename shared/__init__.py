"""What the API, the workers and the CLI share: settings, models, database and business rules."""
