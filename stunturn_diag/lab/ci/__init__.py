"""`lab run` / `lab matrix`: run anyone's P2P program (a server and two peers) through
lab NAT pairs, for CI.

Pure parts: :mod:`.placeholders` (command templates), :mod:`.plan` (matrix expansion,
plan files), :mod:`.theory` (can a pair be punched, from the catalogue's ground truth
via :mod:`stunturn_diag.sansio.punch.decision`), :mod:`.report` (Markdown, JUnit XML, JSON
lines). I/O: :mod:`.owner` (who owns a lab, for ``lab down --all --mine``),
:mod:`.netem` (is ``sch_netem`` there) and :mod:`.runner` (builds labs, runs the
commands, collects, always tears down).
"""
