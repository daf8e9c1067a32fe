"""The kopf operator for AnalyticsProject resources: a thin Kubernetes adapter over
`openanalytics.provisioning`. Its handlers arrive with the operator work."""
