"""The reference vehicle client and the fleet simulator.

`client.VehicleClient` is one vehicle's telematics unit (the Uptane Primary) speaking the
contract of docs/vehicle-api.md; `fleet.run_fleet` runs many of them at once against a server;
`cli.simulate` is `otacm simulate`. The other modules are the client's parts, each small enough
to lift into another code base on its own: `records` (provisioning records), `wire` (the JSON
shapes), `uptane` (full verification, pure), `repositories` (python-tuf on httpx), `download`
(resumable downloads), `images` (checking and decrypting what was downloaded), `manifest`
(signing), `provisioning` (trusted roots, shared HTTP clients), `backoff`, `vehicle` (the
simulated car: its conditions, its owner, its A/B banks) and `link` (where the simulation
breaks the network).

A client built from this package talks to otacm over HTTP only; the one otacm module it uses is
`otacm.security.encryption`, the encrypted stream format both sides share.
"""
