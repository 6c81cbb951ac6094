"""The course's build and grading tools: `release` makes the student release, the solution modules and the
book pages from the source notebooks; `grade` autogrades submissions with nbgrader and reports scores."""
