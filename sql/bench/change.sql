-- make bench's changed day: a measure's weekly hours corrected at the source (stamped updated_at).
UPDATE measures
   SET weekly_hours = CASE WHEN weekly_hours >= 30 THEN weekly_hours - 1 ELSE weekly_hours + 1 END,
       updated_at = :now
 WHERE measure_id = :measure_id
