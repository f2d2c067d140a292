"""BGP fuzzing over real sessions (docs/lab.md): raw sessions, seeded mutations, campaigns, targets."""
