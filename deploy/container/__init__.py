"""The bento as a container image: `python -m deploy.container build|test`.

`build` (`make container`) is plain `bentoml containerize`: with the Docker
backend where a Docker engine answers, else with buildah. `test`
(`make container-test`) builds an image (or takes one), runs it with docker or
podman, checks `/readyz`, `/metadata` and a real `/predict`, and removes the
container. What only machines without Docker or Docker Hub need lives in
`prepare_no_docker_host.sh`, which `test` runs on such machines.
"""
