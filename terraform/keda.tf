# KEDA scales each worker pool on its own demand (docs/adr/0005). Its metrics-api scaler
# calls the Celeriac API inside the cluster, so the operator needs no AWS identity.
resource "helm_release" "keda" {
  name             = "keda"
  repository       = "https://kedacore.github.io/charts"
  chart            = "keda"
  version          = var.keda_chart_version
  namespace        = "keda"
  create_namespace = true
  atomic           = true
  wait             = true

  values = [yamlencode({
    resources = {
      operator = {
        requests = { cpu = "100m", memory = "128Mi" }
        limits   = { cpu = "1", memory = "1000Mi" }
      }
      metricServer = {
        requests = { cpu = "100m", memory = "128Mi" }
        limits   = { cpu = "1", memory = "1000Mi" }
      }
    }
  })]
}
