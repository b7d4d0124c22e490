"""The sealed lab: one network namespace per host, veth links between lab
namespaces only, services started by PID, every link captured with tcpdump,
and each documented step checked against the captures."""
