"""What travels between the course and an LMS: collecting submissions, exporting grades, feedback pages."""
