"""The `superpose` command. The only package that prints or exits."""
