"""Coverage-guided fuzzing of callrt's sans-IO codec; see fuzz/README.md."""
