module dlock.ci/vulndb

go 1.25.0
