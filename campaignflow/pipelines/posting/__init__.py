"""The posting-plan pipeline: drafts -> selected_post -> publications -> engagement, paid in credits."""

STAGES = ("drafts", "selected_post", "publications", "engagement")
