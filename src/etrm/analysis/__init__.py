"""Looking at data, runs and models: drawings, figures and reports."""
