"""The public Python face (`import kadapter`): the classes a user loads trained models with, built on
the stages below. Nothing below this layer imports it."""
