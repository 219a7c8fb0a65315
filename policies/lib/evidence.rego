# Evidence a rule may allow on: present and well-formed, or it does not count. Every accessor here is
# undefined for a missing, null, blank, mistyped or unknown value, so a rule written as "allowed only when
# the evidence shows it" denies on anything else. The accessors never call a built-in on an unchecked
# value: a built-in's type error stops regorus's whole evaluation, and undefines only one expression in OPA.
package sovereign.evidence

import rego.v1

iso_countries := data.country_lists.iso_3166_1_alpha_2

# A country as an ISO 3166-1 alpha-2 code, in any case on input.
country(document, key) := code if {
	value := document[key]
	is_string(value)
	code := upper(trim_space(value))
	code in iso_countries
}

# A non-blank string: an id, an approval, a licence number.
text(document, key) := trimmed if {
	value := document[key]
	is_string(value)
	trimmed := trim_space(value)
	trimmed != ""
}

# A value from a closed set, exactly as the contracts spell it.
one_of(document, key, allowed) := document[key] if document[key] in allowed

# Lower-cased, trimmed strings of a list (unknown shapes give none: callers decide what absence means).
lowered(values) := {lower(trim_space(value)) |
	is_array(values)
	some value in values
	is_string(value)
}

months_of_31_days := {"01", "03", "05", "07", "08", "10", "12"}

days_up_to_28 := {
	"01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14",
	"15", "16", "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28",
}

leap_year(year) if {
	year % 4 == 0
	year % 100 != 0
}

leap_year(year) if year % 400 == 0

day_exists(year, month, day) if day in days_up_to_28

day_exists(year, month, day) if {
	day == "29"
	month != "02"
}

day_exists(year, month, day) if {
	day == "29"
	leap_year(year)
}

day_exists(year, month, day) if {
	day == "30"
	month != "02"
}

day_exists(year, month, day) if {
	day == "31"
	month in months_of_31_days
}

# Years 1970 to 2261: times in nanoseconds since 1970 fit 64 bits only so far.
calendar_day(value) if {
	is_string(value)
	regex.match(`^(19[7-9][0-9]|2[01][0-9][0-9]|22[0-5][0-9]|2260|2261)-(0[1-9]|1[0-2])-[0-3][0-9]$`, value)
	day_exists(to_number(substring(value, 0, 4)), substring(value, 5, 2), substring(value, 8, 2))
}

day_ns := (24 * 3600) * 1000000000

# A calendar date (a certificate's or an exemption's expiry) lasts until 24:00 KST on that date.
date_end_ns(document, key) := time.parse_rfc3339_ns(sprintf("%sT00:00:00+09:00", [document[key]])) + day_ns if {
	calendar_day(document[key])
}

# An RFC 3339 time with an explicit offset, as the contracts write it.
timestamp_ns(document, key) := time.parse_rfc3339_ns(value) if {
	value := document[key]
	is_string(value)
	regex.match(`^[0-9-]{10}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$`, value)
	calendar_day(substring(value, 0, 10))
}

# A finite number (JSON has no infinity, but a caller's encoder may write one).
number(document, key) := document[key] if is_number(document[key])

# The name a message uses for a document: its id when it has one.
label(document, key, fallback) := text(document, key) if text(document, key) else := fallback
