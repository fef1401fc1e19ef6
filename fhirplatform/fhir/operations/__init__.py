"""FHIR operations ($validate, Patient/$everything, Observation/$lastn): their views,
what each selects or checks, and the answer to any operation the server does not offer."""
