"""Training, evaluation and int8 export of the digit and character models."""
