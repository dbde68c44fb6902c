"""The executor process: hosts one bundle, runs its functions."""
