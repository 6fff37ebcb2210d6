"""The morning report: its queries, case pictures, charts and HTML."""
